# my_workflow/runner.py
from tilebox.workflows import Runner
from tilebox.workflows.cache import LocalFileSystemCache

from my_workflow.tasks import ProcessScene

runner = Runner(
    tasks=[ProcessScene],
    cache=LocalFileSystemCache(),
)
