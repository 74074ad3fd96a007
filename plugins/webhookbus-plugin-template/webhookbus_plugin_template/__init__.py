"""A webhookbus verifier plugin for Stripe webhooks, and the template to copy for your own.

webhookbus finds :class:`StripeVerifier` through the ``webhookbus.verifiers`` entry point in
this distribution's ``pyproject.toml``; nothing else connects the two.
"""

from webhookbus_plugin_template.verifier import StripeOptions, StripeVerifier

__all__ = ["StripeOptions", "StripeVerifier"]
