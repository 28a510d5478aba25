"""Imports every module that registers CLI actions. A new action module adds
its import here."""
