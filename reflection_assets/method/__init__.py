"""The method's rules, pure: records, prompts and their profiles, parsers, requests, the judge's rule, V2's selection. No I/O."""
