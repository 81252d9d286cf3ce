"""The error raised for unusable builder inputs."""


class DatasetBuildError(ValueError):
    """An input file cannot be turned into the dataset; the message names the file and the problem."""
