"""bench-rounds' do-nothing Flower App: what a FedAvg round costs when the sites do no work."""
