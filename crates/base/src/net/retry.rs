//! Trying again: the mechanism (attempts, waits, backoff) apart from the
//! decision, a [`RetryPolicy`] saying which outcomes are worth another try.
//! The purge targets, Alibaba Cloud's client and the server's fetcher all
//! retry through [`send_with_retry`]; each brings its policy, and keeps
//! what is its own (rate buckets, fetch slots, a deadline, a stop flag) in
//! the attempt and in [`AfterFailure`].

use std::future::Future;
use std::time::Duration;

use super::Backoff;

/// What a policy says of one attempt's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Keep it: a success, or a failure that trying again won't change.
    Final,
    /// Try again, waiting at least this long if the other end said so.
    Again(Option<Duration>),
    /// Nothing was attempted (the run stopped first): answer the previous
    /// outcome if there was one.
    Abandoned,
}

/// Which outcomes are worth another try.
pub trait RetryPolicy<T, E> {
    /// The verdict on `outcome`.
    fn verdict(&self, outcome: &Result<T, E>) -> Verdict;
}

impl<T, E, F: Fn(&Result<T, E>) -> Verdict> RetryPolicy<T, E> for F {
    fn verdict(&self, outcome: &Result<T, E>) -> Verdict {
        self(outcome)
    }
}

/// What the caller does after an outcome its policy would try again.
pub enum AfterFailure<T, E> {
    /// Go on: wait and try again (if attempts remain).
    Retry,
    /// Stop here, answering this outcome.
    Keep,
    /// Stop, answering this instead (a deadline the wait would pass).
    End(Result<T, E>),
}

/// How many attempts at most, and the waits between them.
#[derive(Debug, Clone, Copy)]
pub struct Attempts {
    /// The waits between attempts.
    pub backoff: Backoff,
    /// Attempts in all, the first included (at least 1).
    pub max: u32,
}

/// Runs `attempt` (given how many were made before it) until `policy`
/// calls an outcome final or the attempts run out, and answers the last
/// outcome and the attempts made. After each outcome worth another try,
/// `after_failure` sees it and the wait before the next attempt (`None`
/// when none follows): it gives back what the attempt held, and may stop.
/// A wait ends early when `stopped` resolves, answering the last outcome.
pub async fn send_with_retry<T, E, Attempt, Stop>(
    attempts: Attempts,
    policy: &impl RetryPolicy<T, E>,
    mut attempt: impl FnMut(u32) -> Attempt,
    mut after_failure: impl FnMut(&Result<T, E>, Option<Duration>) -> AfterFailure<T, E>,
    stopped: impl Fn() -> Stop,
) -> (Result<T, E>, u32)
where
    Attempt: Future<Output = Result<T, E>>,
    Stop: Future<Output = ()>,
{
    let mut made = 0;
    let mut last = None;
    loop {
        let outcome = attempt(made).await;
        let after = match policy.verdict(&outcome) {
            Verdict::Final => return (outcome, made.saturating_add(1)),
            Verdict::Abandoned => return (last.unwrap_or(outcome), made),
            Verdict::Again(after) => after,
        };
        made = made.saturating_add(1);
        let next = (made < attempts.max.max(1)).then(|| attempts.backoff.delay(made - 1, after));
        match after_failure(&outcome, next) {
            AfterFailure::Retry => {}
            AfterFailure::Keep => return (outcome, made),
            AfterFailure::End(ended) => return (ended, made),
        }
        let Some(delay) = next else {
            return (outcome, made);
        };
        last = Some(outcome);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = stopped() => {
                if let Some(outcome) = last {
                    return (outcome, made);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick() -> Attempts {
        Attempts {
            backoff: Backoff {
                base: Duration::from_millis(1),
                cap: Duration::from_millis(2),
            },
            max: 3,
        }
    }

    fn again_on_err(outcome: &Result<u32, u32>) -> Verdict {
        match outcome {
            Ok(_) => Verdict::Final,
            Err(0) => Verdict::Abandoned,
            Err(_) => Verdict::Again(None),
        }
    }

    #[tokio::test]
    async fn retries_until_final_or_out_of_attempts_and_gives_back_each_failure() {
        let mut given_back = 0;
        let (outcome, made) = send_with_retry(
            quick(),
            &again_on_err,
            |made| async move { if made < 2 { Err(7) } else { Ok(made) } },
            |_, _| {
                given_back += 1;
                AfterFailure::Retry
            },
            std::future::pending,
        )
        .await;
        assert_eq!((outcome, made, given_back), (Ok(2), 3, 2));
        let (outcome, made) = send_with_retry(
            quick(),
            &again_on_err,
            |_| async { Err::<u32, u32>(9) },
            |_, _| AfterFailure::Retry,
            std::future::pending,
        )
        .await;
        assert_eq!((outcome, made), (Err(9), 3), "the last failure, after max attempts");
    }

    #[tokio::test]
    async fn an_abandoned_attempt_answers_the_previous_outcome_and_end_replaces_it() {
        let (outcome, made) = send_with_retry(
            quick(),
            &again_on_err,
            |made| async move { if made == 0 { Err(5) } else { Err(0) } },
            |_, _| AfterFailure::Retry,
            std::future::pending,
        )
        .await;
        assert_eq!((outcome, made), (Err(5), 1));
        let (outcome, _) = send_with_retry(
            quick(),
            &again_on_err,
            |_| async { Err::<u32, u32>(5) },
            |_, next| match next {
                Some(_) => AfterFailure::End(Err(42)),
                None => AfterFailure::Retry,
            },
            std::future::pending,
        )
        .await;
        assert_eq!(outcome, Err(42));
    }
}
