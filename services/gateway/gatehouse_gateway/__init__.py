"""The HTTP/JSON gateway: routes and shapes generated from the protos' ``google.api.http`` rules."""
