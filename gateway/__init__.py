"""mailgate: an outbound mail gateway.

Apps speak plain SMTP to the listener; policy decides who may send what to where;
messages leave over verified, authenticated TLS; every session is audited.
"""

__version__ = "0.1.0"
