"""One audit: request, run, measure, bound, layers, gates, comparison, distances."""
