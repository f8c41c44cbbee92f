//! Arbitrary bytes decoded as `TaskSubmissions` (as the server receives them in SubmitJob and
//! in a computed task's subtasks) and validated: anything accepted is a well-formed task list.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use tilebox::api::workflows_v1::TaskSubmissions;
use tilebox::api::submission::{self, Limits};

const LIMITS: Limits = Limits {
    max_input_bytes: 64,
    max_tasks: 256,
};

fuzz_target!(|data: &[u8]| {
    let Ok(submissions) = TaskSubmissions::decode(data) else {
        return;
    };
    let Ok(tasks) = submission::expand(&submissions, "default", LIMITS) else {
        return;
    };
    let expected: usize = submissions
        .task_groups
        .iter()
        .map(|group| group.inputs.len())
        .sum();
    assert_eq!(tasks.len(), expected);
    assert!(tasks.len() <= LIMITS.max_tasks);
    assert!(!tasks.is_empty() && submissions.task_groups.len() <= submission::MAX_GROUPS);
    for (index, task) in tasks.iter().enumerate() {
        assert!(task.input.len() <= LIMITS.max_input_bytes);
        assert!(!task.cluster.is_empty());
        assert!(!task.display.is_empty());
        assert!(task.max_retries >= 0);
        let identifier = &task.identifier;
        assert!(!identifier.name.is_empty() && identifier.name.len() <= submission::MAX_NAME_BYTES);
        let (major, minor) = identifier
            .version
            .strip_prefix('v')
            .and_then(|rest| rest.split_once('.'))
            .expect("an accepted version is vMAJOR.MINOR");
        assert_eq!(
            major.parse::<u64>().ok(),
            Some(identifier.major),
            "{identifier:?}"
        );
        assert_eq!(
            minor.parse::<u64>().ok(),
            Some(identifier.minor),
            "{identifier:?}"
        );
        for &dependency in &task.depends_on {
            assert!(
                dependency < tasks.len(),
                "task {index} depends on {dependency}"
            );
            assert_ne!(dependency, index, "task {index} depends on itself");
        }
    }
    // No cycles: Kahn's algorithm removes every task.
    let mut waiting: Vec<usize> = tasks.iter().map(|task| task.depends_on.len()).collect();
    let mut dependants = vec![Vec::new(); tasks.len()];
    for (index, task) in tasks.iter().enumerate() {
        for &dependency in &task.depends_on {
            dependants[dependency].push(index);
        }
    }
    let mut ready: Vec<usize> = (0..tasks.len())
        .filter(|&task| waiting[task] == 0)
        .collect();
    let mut removed = 0;
    while let Some(task) = ready.pop() {
        removed += 1;
        for &dependant in &dependants[task] {
            waiting[dependant] -= 1;
            if waiting[dependant] == 0 {
                ready.push(dependant);
            }
        }
    }
    assert_eq!(
        removed,
        tasks.len(),
        "the accepted dependencies form a cycle"
    );
});
