"""Fitting: the estimators, their options, the label-free threshold, shard jobs."""
