//! The CoordinatorActor: runs a coordinator round on a timer. Every node has
//! one; the rounds do real work only where it matters (bootstrap before the
//! control plane is formed, map and voter upkeep on the Raft leader), so the
//! coordinator moves with leadership by itself.

use std::time::Duration;

use actix::prelude::*;

use crate::control::ControlPlane;

/// How often the coordinator looks at gossip and the map.
pub const ROUND: Duration = Duration::from_millis(250);

pub struct CoordinatorActor {
    control: ControlPlane,
    /// A round is running; the next tick is skipped rather than queued.
    busy: bool,
}

impl CoordinatorActor {
    pub fn new(control: ControlPlane) -> Self {
        Self {
            control,
            busy: false,
        }
    }
}

impl Actor for CoordinatorActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(ROUND, |act, ctx| {
            if act.busy {
                return;
            }
            act.busy = true;
            let control = act.control.clone();
            ctx.spawn(
                async move { control.tick().await }
                    .into_actor(act)
                    .map(|_, act, _| act.busy = false),
            );
        });
    }
}
