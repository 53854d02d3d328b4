"""The top layer: what users touch.

The labeller (load a model once, label essays with character offsets), the terminal feedback,
the local web page and JSON API (`serve`, with `static/`), export to one .zip, `info`, sharded
`predict` output (`shards`) and the command line (`cli`). They list stages from the decoder
registry (`discourse_rl.decoders.registry`) and never name one.
"""
