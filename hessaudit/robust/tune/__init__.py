"""Automatic choice of the finetuner's options (``hessaudit tune``)."""
