"""``[cluster]``: what several gateway instances share through one Redis.

`gateway.cluster.store` speaks to Redis (blocking, redis-py: one Lua script per decision);
`gateway.cluster.shared` runs it off the reactor thread in a thread pool of its own and decides
what happens while Redis is away; `gateway.cluster.cooldowns` tells the other instances about
an upstream this one found down. Only the daemon's wiring (and ``mailgate check --connect``) uses
this package; the policy it feeds stays pure.
"""
