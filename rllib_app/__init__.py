"""The training app: wires the tool machine env and the GRU module into Ray RLlib."""
