"""Which measure tracks the generalization gap over many audits (``hessaudit correlate``)."""
