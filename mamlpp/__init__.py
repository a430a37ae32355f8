"""mamlpp: MAML++ (Antoniou, Edwards & Storkey, ICLR 2019), reproduced, measured and explained."""

__version__ = "0.1.0"
