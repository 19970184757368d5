"""The local lab, apart from the product: nothing in the product imports this package except
the CLI's `lab` commands (tests and benchmarks may).

- `stack`: `cutover lab up|down|status|knob`, every component a cutover touches, on loopback;
- `apps`: the applications' source and target HTTP services;
- `disk`: a source VM's disk file with data the lab can check;
- `demo`: the README's main job (scripts/demo.sh), a wave of three cutovers checked end to end;
- `vcsim`, `libvirtd`: launchers of the vSphere simulator (lab/vcsim/main.go) and of a
  private libvirtd, for the lab and the tests.
"""
