//! Actions: one named operation on Qualtrics, Salesforce or ServiceNow (create a contact, upsert a
//! record, open an incident, send a distribution …), described by an [`ActionSpec`] and run with
//! JSON inputs.
//!
//! The same action runs from the CLI (`xmbridge action NAME --input k=v`, JSON out) and as a step
//! of a workflow, so this crate owns the [`Action`] trait, the input/output shapes, the error
//! classification that tells a delivery worker whether to retry, pause or dead-letter
//! ([`Disposition`]), and the [`Registry`] where every built-in action is registered (one line per
//! module). Every system's module writes an action the same way: a static [`ActionSpec`] plus a
//! function over that module's `Call` (the checked request and the system's client). It must not own HTTP clients' internals (those are `xmbridge-qualtrics` and the
//! Salesforce/ServiceNow client crates, reached through [`ActionContext`]), store anything, or
//! schedule retries itself: that is the workflow engine's job.

pub mod inputs;
pub mod qualtrics;
pub mod salesforce;
pub mod servicenow;

pub use inputs::{opt_bool, opt_object, opt_str, opt_u64, req_str};

use futures_util::future::BoxFuture;
use serde_json::{Map, Value};
use std::any::{Any, TypeId};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Inputs of one action run: field name → JSON value.
pub type Inputs = Map<String, Value>;

/// The external system an action talks to (the one list lives in `xmbridge-auth`).
pub use xmbridge_auth::System;

/// One input an action accepts.
#[derive(Clone, Copy, Debug)]
pub struct InputSpec {
    /// The input's key in `ActionRequest::inputs`, as workflow files and `--input` write it.
    pub name: &'static str,
    /// A run without this input (or with it null) fails with `BadInput` before the action runs.
    pub required: bool,
    /// One line for `xmbridge action NAME --help`-style listings.
    pub help: &'static str,
}

/// What an action is: its name on the command line and in workflow files, its system, and inputs.
#[derive(Clone, Copy, Debug)]
pub struct ActionSpec {
    /// Kebab-case name, unique in the registry (`create-contact`, `salesforce.upsert`).
    pub name: &'static str,
    /// The system whose client the action takes from the [`ActionContext`].
    pub system: System,
    /// The human title (for Qualtrics, the ServiceNow spoke's action name, e.g. "Create Contact").
    pub title: &'static str,
    /// Grouping for listings (e.g. "Contact Management").
    pub category: &'static str,
    /// Every input the action accepts; any other key is refused.
    pub inputs: &'static [InputSpec],
    /// Pages through results ("Stream" actions): the output is an array of every element.
    pub stream: bool,
    /// Changes something in the target system (a retry must be idempotent: see `delivery_key`).
    pub writes: bool,
}

/// One run of an action.
#[derive(Clone, Debug, Default)]
pub struct ActionRequest {
    /// The input values, checked against the spec's inputs before the action runs.
    pub inputs: Inputs,
    /// A key unique to this delivery (event id + step). Writing actions use it to make a retry
    /// find the record the first attempt created instead of creating a second one (upsert by
    /// external id, a correlation id looked up first, …).
    pub delivery_key: Option<String>,
}

/// The clients an action may use, keyed by type: the CLI or the workflow engine puts in what the
/// chosen connections provide (an `xmbridge_qualtrics::Client`, a Salesforce client, …) and each
/// action takes the one of its system with [`ActionContext::get`]. A type map lets a caller put in
/// only the clients its connections provide (an action whose client is missing is
/// `NotConfigured`) without a field per system.
#[derive(Clone, Default)]
pub struct ActionContext {
    values: HashMap<TypeId, Arc<dyn Any + Send + Sync>>,
}

impl ActionContext {
    /// An empty context: every action run with it is `NotConfigured`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the value of type `T`.
    pub fn with<T: Any + Send + Sync>(mut self, value: T) -> Self {
        self.insert(value);
        self
    }

    /// Adds (or replaces) the value of type `T` in place.
    pub fn insert<T: Any + Send + Sync>(&mut self, value: T) {
        self.values.insert(TypeId::of::<T>(), Arc::new(value));
    }

    /// The value of type `T`, or `None` when the caller put none in.
    pub fn get<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.values
            .get(&TypeId::of::<T>())
            .and_then(|v| v.downcast_ref::<T>())
    }
}

impl fmt::Debug for ActionContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Values are clients holding credentials: never print them.
        write!(f, "ActionContext({} clients)", self.values.len())
    }
}

/// What a delivery worker should do after an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// Try again later (after at least `after` when the server said so); counts against the
    /// event's retry budget.
    Retry {
        /// The server's requested wait (`Retry-After`); `None` means the worker's own backoff.
        after: Option<Duration>,
    },
    /// Stop calling this account until a person fixes it (re-authorizes); the event keeps its
    /// retry budget and waits.
    Pause,
    /// Retrying cannot help: park the event in the dead letter with this error.
    DeadLetter,
}

/// Why an action failed, classified so the caller can retry, pause or give up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ActionError {
    /// An input is missing or malformed: the caller's mistake.
    #[error("action {action}: input `{field}`: {reason}")]
    BadInput {
        /// The action's registry name.
        action: String,
        /// The input at fault (`NAME` when the action name itself is unknown).
        field: String,
        /// What is wrong with it, worded to follow the field name.
        reason: String,
    },
    /// The system's connection or account is not set up in this context.
    #[error("action {action}: no {system} connection available: {fix}")]
    NotConfigured {
        /// The action's registry name.
        action: String,
        /// The system whose connection is missing.
        system: System,
        /// What to run or pass to set the connection up.
        fix: String,
    },
    /// The account's token was refused for good (refresh token revoked or expired).
    #[error("action {action}: {system} account token expired: {fix}")]
    TokenExpired {
        /// The action's registry name.
        action: String,
        /// The system whose account must be re-authorized.
        system: System,
        /// The command that re-authorizes, e.g. `xmbridge account link sf-prod --refresh`.
        fix: String,
    },
    /// The system said to slow down (HTTP 429, Salesforce REQUEST_LIMIT_EXCEEDED).
    #[error("action {action}: {system} rate limit reached{}", after_text(.retry_after))]
    RateLimited {
        /// The action's registry name.
        action: String,
        /// The system that limited the call.
        system: System,
        /// The server's requested wait (`Retry-After`), when it gave one.
        retry_after: Option<Duration>,
    },
    /// A failure that may pass: 5xx, timeouts, connection errors, row locks.
    #[error("action {action}: {message}")]
    Transient {
        /// The action's registry name.
        action: String,
        /// The system's or transport's error text.
        message: String,
    },
    /// The system refused the request for a reason a retry cannot fix (validation rule, missing
    /// permission, unknown field, several records matching a key …).
    #[error("action {action}: {message}")]
    Permanent {
        /// The action's registry name.
        action: String,
        /// The system's error text, for the dead letter.
        message: String,
        /// The system's own error body, when useful for a person reading the dead letter.
        details: Option<Value>,
    },
}

fn after_text(d: &Option<Duration>) -> String {
    match d {
        Some(d) => format!("; retry after {} s", d.as_secs().max(1)),
        None => String::new(),
    }
}

impl ActionError {
    /// What a delivery worker should do with the event after this error.
    pub fn disposition(&self) -> Disposition {
        match self {
            ActionError::RateLimited { retry_after, .. } => Disposition::Retry {
                after: *retry_after,
            },
            ActionError::Transient { .. } => Disposition::Retry { after: None },
            ActionError::TokenExpired { .. } | ActionError::NotConfigured { .. } => {
                Disposition::Pause
            }
            ActionError::BadInput { .. } | ActionError::Permanent { .. } => Disposition::DeadLetter,
        }
    }

    /// A missing required input.
    pub fn missing(spec: &ActionSpec, field: &str) -> ActionError {
        ActionError::BadInput {
            action: spec.name.to_string(),
            field: field.to_string(),
            reason: "is required".to_string(),
        }
    }
}

/// One operation on an external system. Implementations are stateless values registered once.
pub trait Action: Send + Sync {
    /// The action's name, system and inputs.
    fn spec(&self) -> &ActionSpec;

    /// Runs the action. The output is JSON (what `xmbridge action` prints): the created or found
    /// record, or for "Stream" actions an array of every element.
    fn run<'a>(
        &'a self,
        ctx: &'a ActionContext,
        request: ActionRequest,
    ) -> BoxFuture<'a, Result<Value, ActionError>>;
}

/// How one system's actions get what they run with: the module's `Call` (the checked request
/// and the system's client, taken from the [`ActionContext`]), and how its functions are called.
pub(crate) trait Connect: 'static {
    type Call<'a>: Send;
    /// `for<'a> fn(Call<'a>) -> BoxFuture<'a, …>` (spelled per system: the lifetime must show
    /// in the argument).
    type Run: Copy + Send + Sync + 'static;

    fn call<'a>(
        spec: &'static ActionSpec,
        ctx: &'a ActionContext,
        request: ActionRequest,
    ) -> Result<Self::Call<'a>, ActionError>;

    fn invoke<'a>(
        run: Self::Run,
        call: Self::Call<'a>,
    ) -> BoxFuture<'a, Result<Value, ActionError>>;
}

/// The one way an action is written: a static [`ActionSpec`] plus a function over its system's
/// `Call`. Inputs are checked against the spec before the function runs.
pub(crate) struct FnAction<S: Connect> {
    spec: &'static ActionSpec,
    run: S::Run,
}

impl<S: Connect> FnAction<S> {
    pub(crate) const fn new(spec: &'static ActionSpec, run: S::Run) -> Self {
        FnAction { spec, run }
    }
}

impl<S: Connect> Action for FnAction<S> {
    fn spec(&self) -> &ActionSpec {
        self.spec
    }

    fn run<'a>(
        &'a self,
        ctx: &'a ActionContext,
        request: ActionRequest,
    ) -> BoxFuture<'a, Result<Value, ActionError>> {
        Box::pin(async move {
            check_inputs(self.spec, &request.inputs)?;
            let call = S::call(self.spec, ctx, request)?;
            S::invoke(self.run, call).await
        })
    }
}

/// Checks `inputs` against the spec: required inputs present, no unknown ones.
pub fn check_inputs(spec: &ActionSpec, inputs: &Inputs) -> Result<(), ActionError> {
    for input in spec.inputs.iter().filter(|i| i.required) {
        match inputs.get(input.name) {
            None | Some(Value::Null) => return Err(ActionError::missing(spec, input.name)),
            Some(_) => {}
        }
    }
    if let Some(unknown) = inputs
        .keys()
        .find(|k| !spec.inputs.iter().any(|i| i.name == k.as_str()))
    {
        let known: Vec<&str> = spec.inputs.iter().map(|i| i.name).collect();
        return Err(ActionError::BadInput {
            action: spec.name.to_string(),
            field: unknown.clone(),
            reason: format!(
                "is not an input of this action (inputs: {})",
                known.join(", ")
            ),
        });
    }
    Ok(())
}

/// Every action by name.
#[derive(Clone, Default)]
pub struct Registry {
    actions: BTreeMap<&'static str, Arc<dyn Action>>,
}

impl Registry {
    /// An empty registry (see [`Registry::builtin`] for the built-in actions).
    pub fn new() -> Self {
        Self::default()
    }

    /// The built-in actions of every system. Each system's module adds its own with one line here.
    pub fn builtin() -> Self {
        // Registration lines for each system's module go here (`qualtrics::register(&mut r);`).
        let mut r = Registry::new();
        qualtrics::register(&mut r);
        servicenow::register(&mut r);
        salesforce::register(&mut r);
        r
    }

    /// Adds an action; a second action with the same name replaces the first (tests use this to
    /// swap in doubles).
    pub fn register(&mut self, action: impl Action + 'static) {
        let action: Arc<dyn Action> = Arc::new(action);
        self.actions.insert(action.spec().name, action);
    }

    /// The action registered under `name`, if any.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Action>> {
        self.actions.get(name)
    }

    /// Every registered action, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Action>> {
        self.actions.values()
    }

    /// Looks an action up or says which ones exist.
    pub fn find(&self, name: &str) -> Result<&Arc<dyn Action>, ActionError> {
        self.get(name).ok_or_else(|| ActionError::BadInput {
            action: name.to_string(),
            field: "NAME".to_string(),
            reason: format!(
                "no such action; known actions: {}",
                self.actions.keys().copied().collect::<Vec<_>>().join(", ")
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: ActionSpec = ActionSpec {
        name: "echo",
        system: System::Qualtrics,
        title: "Echo",
        category: "Test",
        inputs: &[
            InputSpec {
                name: "text",
                required: true,
                help: "what to echo",
            },
            InputSpec {
                name: "times",
                required: false,
                help: "how often",
            },
        ],
        stream: false,
        writes: false,
    };

    struct Echo;
    impl Action for Echo {
        fn spec(&self) -> &ActionSpec {
            &SPEC
        }
        fn run<'a>(
            &'a self,
            _ctx: &'a ActionContext,
            request: ActionRequest,
        ) -> BoxFuture<'a, Result<Value, ActionError>> {
            Box::pin(async move {
                check_inputs(&SPEC, &request.inputs)?;
                Ok(request.inputs["text"].clone())
            })
        }
    }

    #[test]
    fn inputs_are_checked() {
        let mut inputs = Inputs::new();
        let err = check_inputs(&SPEC, &inputs).unwrap_err();
        assert_eq!(err.to_string(), "action echo: input `text`: is required");
        inputs.insert("text".into(), "hi".into());
        check_inputs(&SPEC, &inputs).unwrap();
        inputs.insert("colour".into(), "red".into());
        let err = check_inputs(&SPEC, &inputs).unwrap_err().to_string();
        assert!(
            err.contains("`colour`") && err.contains("text, times"),
            "{err}"
        );
    }

    #[test]
    fn registry_finds_or_lists() {
        let mut r = Registry::new();
        r.register(Echo);
        assert!(r.find("echo").is_ok());
        let err = r
            .find("ecko")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("known actions: echo"), "{err}");
    }

    #[test]
    fn context_holds_clients_by_type_and_hides_them() {
        let ctx = ActionContext::new().with(String::from("secret-token"));
        assert_eq!(
            ctx.get::<String>().map(String::as_str),
            Some("secret-token")
        );
        assert!(ctx.get::<u32>().is_none());
        assert!(!format!("{ctx:?}").contains("secret"));
    }

    #[test]
    fn errors_say_what_to_do_next() {
        let e = ActionError::RateLimited {
            action: "x".into(),
            system: System::Salesforce,
            retry_after: Some(Duration::from_secs(30)),
        };
        assert_eq!(
            e.disposition(),
            Disposition::Retry {
                after: Some(Duration::from_secs(30))
            }
        );
        assert!(e.to_string().ends_with("retry after 30 s"));
        let e = ActionError::TokenExpired {
            action: "salesforce.upsert".into(),
            system: System::Salesforce,
            fix: "run `xmbridge account link prod --refresh`".into(),
        };
        assert_eq!(e.disposition(), Disposition::Pause);
    }
}
