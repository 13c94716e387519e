"""flowerbed's Flower App: federated training that the launched pods run."""
