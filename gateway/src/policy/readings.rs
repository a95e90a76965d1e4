//! One request, every reading decided alike: a request that other servers read otherwise
//! ([`crate::extract::other_readings`]) passes only when each reading is decided as the
//! request was. The gateway and `callgate policy test` both ask here, so a policy's tests see
//! the refusal the gateway gives.
use crate::{
    call::Call,
    extract::{ExtractError, Extracted, Reading, path::without_format_suffix},
};

use super::eval::Decision;

/// `request`'s other readings (`readings`), each decided by `decide` and compared with the
/// request's own decision (`spelled`, of the call `function` at `path`). Ok: the readings'
/// calls, all decided alike (a limit counts them too). Err: why the request is refused
/// (`ambiguous_path`): a reading decided otherwise, or refused outright.
pub fn decided_alike(
    (path, function): (&str, &str),
    spelled: &Decision,
    readings: Vec<(Reading, Result<Extracted, ExtractError>)>,
    mut decide: impl FnMut(&mut Call) -> Decision,
) -> Result<Vec<Call>, String> {
    let said = |d: &Decision| match &d.rule {
        Some(r) => format!("{} by rule {r:?}", d.action.as_str()),
        None => format!("{} by default", d.action.as_str()),
    };
    let mut agreed = Vec::new();
    for (reading, read) in readings {
        let who = reading.servers();
        let mut read = read.map_err(|e| {
            format!("{who} reads {path} otherwise, and read that way the request is refused: {e}")
        })?;
        let Some(mut call) = read.calls.pop() else {
            continue;
        };
        let d = decide(&mut call);
        if (d.action, &d.rule) == (spelled.action, &spelled.rule) {
            agreed.push(call);
            continue;
        }
        let read_as = match reading {
            Reading::ExactCase => path.to_string(),
            Reading::HeadAsGet => format!("GET {path}"),
            Reading::FormatSuffix | Reading::FormatSuffixExactCase => {
                without_format_suffix(path).unwrap_or_default()
            }
        };
        return Err(format!(
            "{who} reads {path} as {read_as}: {} ({}), where as decided it is {function} ({}); {}",
            call.function,
            said(&d),
            said(spelled),
            reading.remedy(),
        ));
    }
    Ok(agreed)
}
