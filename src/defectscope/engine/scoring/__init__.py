"""Scoring shared by estimators and exported models, and the shift checks."""
