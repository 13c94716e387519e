"""flowerbed's Pulumi component resources and the pure helpers they are built from."""
