"""The leaf of rlkit: what every other part shares and nothing of rlkit beneath it. The types that flow between
the loop's roles (types), the errors a user can act on (errors), how recipe keys declare their ranges (schema),
devices and dtypes (devices), the local hub cache (hub), image files (images), and the tokenizers of the tiny
models (tiny_tokenizers)."""
