"""Rubric templates for the vlm_judge reward (YAML: prompt, scale, optional json_keys and system)."""
