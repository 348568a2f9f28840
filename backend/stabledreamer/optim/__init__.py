"""What shapes the Gaussians each step: the SDS loss and its noise schedule (``sds``), densify and
prune (``strategy``), and the regularisers (``regularizers``)."""
