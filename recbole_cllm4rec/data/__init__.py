"""Data preparation: raw Amazon review dumps to RecBole atomic files, and locating datasets."""
