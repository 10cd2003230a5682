"""Policy, pure: rule evaluation, rate limits, app passwords, the header rewriter."""
