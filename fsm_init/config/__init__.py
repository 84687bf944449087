"""workcfg.json: its defaults, parsing, masking and validation (the marshmallow schema,
imported only when a configuration exists).

Import rule: config imports the core only.
"""
