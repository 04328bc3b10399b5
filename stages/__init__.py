"""The DVC stage entry points: thin leaves over the dailyrec library. No module imports them."""
