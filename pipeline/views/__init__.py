"""Views: augmentation that stage one can label exactly.

policies (a view as a pure function of integer parameters), draws (stage two's fresh draw), space (a store's view
axis: record, key -> pixels, the draw of stored views), store_sets (the `--views` sets), mixes (mixup, CutMix,
RICAP as exact compositions), mixed (fresh in-batch mixes and stored mix records), mix_choice (`--mix` against the
method and the label source).
"""
