"""The app side: listener, PROXY protocol, the SMTP session, app AUTH."""
