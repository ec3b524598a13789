"""Data the models train on: sources (ring, MNIST, image folders), the prepared-image cache,
and sample grids."""
