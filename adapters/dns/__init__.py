"""The DNS adapter: the record switch (RFC 2136 updates signed with TSIG) and the DNS probe.

The only package that imports dnspython. Every change is a compare-and-swap: read the
record at the zone's authoritative server, then send one update whose prerequisite is
that the record still holds exactly what was read (RFC 2136 "RRset exists, value
dependent"), so a concurrent change by anyone else fails the update instead of being
overwritten. Every change is verified by querying the server afterwards.

Names. A record name ending in a dot is absolute. A name without one is taken as written
when it already ends with the zone (``app.apps.test`` in zone ``apps.test``), and as
relative to the zone otherwise (``app`` -> ``app.apps.test.``). Either way it must lie
inside the site's zone.

The TSIG key is read from the site's ``dns.tsigKeyFile`` (a BIND key file, as written by
``tsig-keygen``) by the worker at the moment it signs, and lives only in this process:
no log line, error message, result or workflow history ever holds its secret.

Errors are typed ApplicationErrors: non-retryable ``DnsUpdateRefused`` (REFUSED: unsigned
or the key is not granted by the zone's update-policy; NOTAUTH: not the zone's primary),
``DnsAuthFailed`` (BADSIG, BADKEY, BADTIME), ``DnsConflict`` (the compare-and-swap lost:
the record changed under us), ``DnsRecordNotFound`` and ``ConfigError``; retryable
``DnsUnavailable`` (timeouts, refused connections, SERVFAIL).

The TTL marker. ``lower_dns_ttl`` lowers the record's TTL ahead of the wave and, in the
same atomic update, writes the TXT record ``_cutover-ttl.<name>`` = ``old=<ttl> at=<unix
seconds>``: the TTL resolvers may still be caching and when the low one was published.
The ``dns`` probe then passes only once ``now - at >= old``; without a marker it judges
the TTL alone and says the age is unknown.

The prior-state record. ``update_dns`` writes, in the same atomic update that points the
record at the target, the TXT record ``_cutover-prior.<name>`` = ``prev=<addresses>
ttl=<ttl> orig=<ttl before the cutover> to=<target> at=<unix seconds>``. The zone is the
one store every worker reads and no crash can lose: a retried ``update_dns`` (its first
attempt's update landed, then the worker died or the verification read failed) reads what
the switch replaced from it, and so do ``restore_dns`` and ``restore_dns_ttl``. (Heartbeat
details would die with a worker killed before its heartbeat was sent; the zone cannot
hold the switch without this record.) ``restore_dns`` (rollback) and ``restore_dns_ttl``
(finalize) put back the TTL in place before the cutover (the one ``lower_dns_ttl``
replaced, when it ran) and delete both companion records in the same update. The key
must be granted TXT at ``_cutover-prior.<name>`` and ``_cutover-ttl.<name>`` as well as A
at the name; an update-policy that does not refuses the switch whole (nothing changes).
"""
