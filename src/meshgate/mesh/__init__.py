"""The mesh side: the addresses meshgate holds on the mesh and the names it serves there."""
