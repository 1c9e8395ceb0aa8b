//! Following refresh and prefetch tasks: by id (`DescribeRefreshTaskById`),
//! or by listing (`DescribeRefreshTasks`).

use serde::{Deserialize, Serialize};

use super::client::number;
use super::{AlibabaCdnClient, AlibabaError};

/// A task's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskStatus {
    /// Done.
    Complete,
    /// In progress.
    Refreshing,
    /// Failed; the task's `description` says why.
    Failed,
    /// A state this version does not know.
    #[serde(untagged)]
    Other(String),
}

impl TaskStatus {
    fn as_str(&self) -> &str {
        match self {
            TaskStatus::Complete => "Complete",
            TaskStatus::Refreshing => "Refreshing",
            TaskStatus::Failed => "Failed",
            TaskStatus::Other(other) => other,
        }
    }
}

/// One object of a refresh or prefetch task (`DescribeRefreshTasks`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Task {
    /// The task.
    pub task_id: String,
    /// The URL, directory or pattern.
    #[serde(default)]
    pub object_path: String,
    /// `file`, `directory`, `regex`, `preload`…
    #[serde(default)]
    pub object_type: String,
    /// Its state.
    pub status: TaskStatus,
    /// Progress, such as `100%`.
    #[serde(default)]
    pub process: String,
    /// When it was created.
    #[serde(default)]
    pub creation_time: String,
    /// Why it failed, when it did.
    #[serde(default)]
    pub description: String,
}

/// Which tasks to list (`DescribeRefreshTasks`). Empty fields do not
/// filter. Alibaba Cloud requires `object_type` whenever `domain_name` or
/// `status` is set, and refuses the call otherwise; so does
/// [`AlibabaCdnClient::tasks_page`], before sending it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskFilter {
    /// One task.
    pub task_id: Option<String>,
    /// One URL.
    pub object_path: Option<String>,
    /// One domain.
    pub domain_name: Option<String>,
    /// Tasks in this state.
    pub status: Option<TaskStatus>,
    /// Tasks of this kind: `file`, `directory`, `regex`, `preload`, `block`
    /// or `unblock`.
    pub object_type: Option<String>,
}

/// The task kinds `DescribeRefreshTasks` filters by.
const TASK_OBJECT_TYPES: [&str; 6] = ["file", "directory", "regex", "preload", "block", "unblock"];

/// Task ids in one `DescribeRefreshTaskById` call.
pub const TASK_IDS_PER_QUERY: usize = 10;

/// One page of tasks.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TaskPage {
    /// The tasks on this page.
    pub tasks: Vec<Task>,
    /// Tasks matching the filter, on all pages.
    pub total_count: u64,
}

impl AlibabaCdnClient {
    /// One page of tasks (`page` from 1, `page_size` at most 100).
    pub async fn tasks_page(&self, filter: &TaskFilter, page: u32, page_size: u32) -> Result<TaskPage, AlibabaError> {
        #[derive(Deserialize, Default)]
        struct Tasks {
            #[serde(rename = "CDNTask", default)]
            cdn_task: Vec<Task>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Answer {
            #[serde(default)]
            tasks: Tasks,
            #[serde(deserialize_with = "number", default)]
            total_count: u64,
        }
        const ACTION: &str = "DescribeRefreshTasks";
        if (filter.domain_name.is_some() || filter.status.is_some()) && filter.object_type.is_none() {
            return Err(AlibabaError::Invalid {
                action: ACTION,
                reason: "ObjectType is required when DomainName or Status is set".into(),
            });
        }
        if let Some(object_type) = filter.object_type.as_deref()
            && !TASK_OBJECT_TYPES.contains(&object_type)
        {
            return Err(AlibabaError::Invalid {
                action: ACTION,
                reason: format!("ObjectType {object_type:?} is none of {}", TASK_OBJECT_TYPES.join(", ")),
            });
        }
        let mut parameters = vec![
            ("PageNumber", page.max(1).to_string()),
            ("PageSize", page_size.clamp(1, 100).to_string()),
        ];
        let fields = [
            ("TaskId", filter.task_id.as_deref()),
            ("ObjectPath", filter.object_path.as_deref()),
            ("DomainName", filter.domain_name.as_deref()),
            ("Status", filter.status.as_ref().map(TaskStatus::as_str)),
            ("ObjectType", filter.object_type.as_deref()),
        ];
        for (name, value) in fields {
            if let Some(value) = value {
                parameters.push((name, value.to_owned()));
            }
        }
        let answer: Answer = self.call(ACTION, &parameters).await?;
        Ok(TaskPage {
            tasks: answer.tasks.cdn_task,
            total_count: answer.total_count,
        })
    }

    /// Every entry of these tasks (`DescribeRefreshTaskById`, at most
    /// [`TASK_IDS_PER_QUERY`] ids a call, 30 calls a second): how refreshes
    /// and prefetches whose task ids are known are followed.
    pub async fn tasks_by_id(&self, task_ids: &[String]) -> Result<Vec<Task>, AlibabaError> {
        const ACTION: &str = "DescribeRefreshTaskById";
        if task_ids.is_empty() || task_ids.len() > TASK_IDS_PER_QUERY {
            return Err(AlibabaError::Invalid {
                action: ACTION,
                reason: format!("takes 1 to {TASK_IDS_PER_QUERY} task ids, not {}", task_ids.len()),
            });
        }
        // The API documents `Tasks` as a plain array here (its SDKs read it
        // so), where `DescribeRefreshTasks` wraps it in `CDNTask`: both are read.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Tasks {
            Plain(Vec<Task>),
            Wrapped {
                #[serde(rename = "CDNTask", default)]
                cdn_task: Vec<Task>,
            },
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Answer {
            tasks: Option<Tasks>,
        }
        let answer: Answer = self.call(ACTION, &[("TaskId", task_ids.join(","))]).await?;
        Ok(match answer.tasks {
            Some(Tasks::Plain(tasks) | Tasks::Wrapped { cdn_task: tasks }) => tasks,
            None => Vec::new(),
        })
    }

    /// Every task matching the filter, page after page.
    pub async fn tasks(&self, filter: &TaskFilter) -> Result<Vec<Task>, AlibabaError> {
        let mut tasks = Vec::new();
        for page in 1.. {
            let found = self.tasks_page(filter, page, 100).await?;
            let last = found.tasks.is_empty() || (tasks.len() + found.tasks.len()) as u64 >= found.total_count;
            tasks.extend(found.tasks);
            if last {
                break;
            }
        }
        Ok(tasks)
    }
}
