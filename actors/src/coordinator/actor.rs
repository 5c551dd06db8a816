//! The CoordinatorActor: runs a coordinator round every [`ROUND`], and at
//! once when there is news that cannot wait for it: this node became the
//! Raft leader (it acts on what it inherits), or a node reported silent
//! was confirmed down (`ControlPlane::on_suspect`). Every node has one; the
//! rounds do real work only where it matters (bootstrap before the control
//! plane is formed, map and voter upkeep on the Raft leader), so the
//! coordinator moves with leadership by itself.

use std::time::Duration;

use actix::prelude::*;
use openraft::ServerState;
use tracing::info;

use crate::control::ControlPlane;

/// How often the coordinator looks at gossip and the map.
pub const ROUND: Duration = Duration::from_millis(250);

pub struct CoordinatorActor {
    control: ControlPlane,
}

impl CoordinatorActor {
    pub fn new(control: ControlPlane) -> Self {
        Self { control }
    }
}

impl Actor for CoordinatorActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let control = self.control.clone();
        ctx.spawn(async move { run(control).await }.into_actor(self));
    }
}

/// Rounds, one at a time, until the control plane shuts down.
async fn run(control: ControlPlane) {
    let mut metrics = control.raft().metrics();
    let mut round = tokio::time::interval(ROUND);
    round.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let me = control.raft_id();
    let (mut leading, mut last_leader) = (false, None);
    loop {
        tokio::select! {
            _ = round.tick() => {}
            _ = control.woken() => {}
            changed = metrics.changed() => {
                if changed.is_err() {
                    return;
                }
                // Read in place: the metrics change at every heartbeat.
                let (now_leading, current, term, previous) = {
                    let m = metrics.borrow_and_update();
                    let now_leading = m.state == ServerState::Leader;
                    let previous = (now_leading && !leading)
                        .then(|| last_leader.and_then(|id| {
                            m.membership_config.membership().get_node(&id).map(|n| n.node_id.clone())
                        }))
                        .flatten();
                    (now_leading, m.current_leader, m.current_term, previous)
                };
                let became = now_leading && !leading;
                leading = now_leading;
                if !now_leading {
                    if let Some(id) = current.filter(|id| *id != me) {
                        last_leader = Some(id);
                    }
                    continue;
                }
                if !became {
                    continue;
                }
                info!(term, previous = ?previous, "this node is now the Raft leader: coordinator round at once");
                control.leading_since(previous).await;
            }
        }
        control.tick().await;
    }
}
