"""Recovery and reconciliation: background workers that settle unknown outcomes, sweep stuck
transactions, reconcile with Bakkt, and apply retention (docs/recovery.md)."""
