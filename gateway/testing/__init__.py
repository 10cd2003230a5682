"""Real peers for tests and the demo: an aiosmtpd submission server and a throwaway CA.

Shipped with the package so users can test their own set-up against the same
servers the suite uses. Everything here binds to loopback only.
"""
