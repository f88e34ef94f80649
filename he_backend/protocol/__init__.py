"""Client and server, and the bytes between them: the plan as the server runs it
(:mod:`~he_backend.protocol.plan`) and its weight-free layout for the client
(:mod:`~he_backend.protocol.plan_layout`), containers (:mod:`~he_backend.protocol.serialization`),
keys (:mod:`~he_backend.protocol.keys`), the client that holds the secret key
(:mod:`~he_backend.protocol.client`), the server that holds the public context only
(:mod:`~he_backend.protocol.server`, with a partner process: :mod:`~he_backend.protocol.workers`),
refresh rounds (:mod:`~he_backend.protocol.refresh`), deployment bundles
(:mod:`~he_backend.protocol.bundle`), runs over processes (:mod:`~he_backend.protocol.parallel`)
and per-step timings (:mod:`~he_backend.protocol.profile`)."""
