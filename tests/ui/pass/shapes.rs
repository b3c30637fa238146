//! Handler shapes that must compile, stacked in either order, with the imports they need.
#![deny(warnings)]

use faststream::{publisher, subscriber, Json, Response};
use faststream::extract::{Headers, Key, Offset, State, Timestamp};

#[derive(serde::Deserialize, serde::Serialize)]
struct Event {
    id: u64,
}

#[publisher("out")]
#[subscriber("in", group_id = "g", auto_offset_reset = "earliest")]
async fn publisher_first(e: Event) -> Event {
    e
}

#[subscriber("a", "b")]
#[subscriber("c")]
async fn many_topics(_k: Key, _h: Headers, _o: Offset, _t: Timestamp, _s: State<u8>) {}

#[subscriber("x")]
#[publisher("y")]
#[publisher("z")]
pub async fn fan_out(#[header("x-id")] id: Option<String>, Json(v): Json<Vec<i32>>) -> Option<Response<String>> {
    Some(Response::new(format!("{id:?}{v:?}")).partition(0))
}

mod inner {
    use faststream::subscriber;

    #[subscriber("inner", crate = "faststream")]
    pub(crate) async fn nested(r#type: String, count: u8) -> Result<String, std::io::Error> {
        Ok(format!("{type}{count}"))
    }
}

fn main() {
    let _ = faststream::routes![publisher_first, many_topics, fan_out, inner::nested];
    let _ = inner::nested(String::new(), 1);
}
