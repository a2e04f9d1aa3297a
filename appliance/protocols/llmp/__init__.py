"""LLMP: reliable, totally ordered messaging over unreliable multicast."""
