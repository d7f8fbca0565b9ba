"""A small Django shop: its settings, an order model and a checkout view, as a shop has them."""
