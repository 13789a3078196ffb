"""fsnn.pipelines: the Ray Train job, the Ray Tune search, deploy-and-evaluate and the CLI."""
