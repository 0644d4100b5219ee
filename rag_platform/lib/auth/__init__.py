"""Authentication beside API keys: OpenID Connect single sign-on (``oidc``)."""
