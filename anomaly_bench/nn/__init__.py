"""Small neural-network building blocks shared by several methods."""
