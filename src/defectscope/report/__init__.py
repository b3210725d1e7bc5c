"""Results tables, rankings, figures and the HTML report of a run."""
