"""Schedule: when rounds are due, claiming them, and the promises they keep."""
