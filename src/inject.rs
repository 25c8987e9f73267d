//! Secrets into an upstream request's headers: the placeholders a caller
//! may put in its own headers (each checked against its secret's `callers`
//! binding), then the route's own headers, which win.

use std::collections::{BTreeSet, HashMap};

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::Route;
use crate::identity::verify::User;
use crate::secret::SecretString;
use crate::secrets::placeholder::{Placeholder, Template};
use crate::secrets::{SecretError, Secrets};

/// One value of a caller header that holds placeholders.
pub(crate) enum CallerValue {
    /// A value without placeholders, kept as it is.
    Plain(HeaderValue),
    /// A value to render with the secrets it names.
    Template(Template),
}

/// A caller header with placeholders in at least one of its values.
pub(crate) struct CallerHeader {
    name: HeaderName,
    values: Vec<CallerValue>,
}

/// The caller's headers that hold placeholders, after checking every
/// placeholder against its secret's `callers` binding: the header name and
/// the route's upstream origin must both be listed. The error says which
/// header was refused and why (for the caller: no secret value in it).
pub(crate) fn caller_placeholders(
    headers: &HeaderMap,
    route: &Route,
    secrets: &Secrets,
) -> Result<Vec<CallerHeader>, String> {
    let mut out = Vec::new();
    for name in headers.keys() {
        let values = headers.get_all(name);
        if !values
            .iter()
            .any(|v| Template::mentions_placeholder(v.as_bytes()))
        {
            continue;
        }
        let mut list = Vec::new();
        for value in values {
            if !Template::mentions_placeholder(value.as_bytes()) {
                list.push(CallerValue::Plain(value.clone()));
                continue;
            }
            let text = value
                .to_str()
                .map_err(|_| format!("header {name}: placeholder in a non-text value"))?;
            let template = Template::parse(text).map_err(|e| format!("header {name}: {e}"))?;
            if template.user_fields().next().is_some() {
                return Err(format!(
                    "header {name}: ${{{{ user.… }}}} is filled by the agent only"
                ));
            }
            for secret in template.secrets() {
                let Some(spec) = secrets.spec(secret) else {
                    return Err(format!("header {name}: unknown secret {secret:?}"));
                };
                let permitted = spec
                    .callers
                    .as_ref()
                    .is_some_and(|b| b.permits(name.as_str(), &route.target));
                if !permitted {
                    return Err(format!(
                        "header {name}: secret {secret:?} may not be placed by callers in \
                         this header towards {}",
                        route.target
                    ));
                }
            }
            list.push(CallerValue::Template(template));
        }
        out.push(CallerHeader {
            name: name.clone(),
            values: list,
        });
    }
    Ok(out)
}

/// Every secret the caller's templates and the route's headers name.
pub(crate) fn secrets_needed(caller: &[CallerHeader], route: &Route) -> BTreeSet<String> {
    caller
        .iter()
        .flat_map(|h| h.values.iter())
        .filter_map(|v| match v {
            CallerValue::Template(t) => Some(t),
            CallerValue::Plain(_) => None,
        })
        .flat_map(Template::secrets)
        .chain(route.headers.iter().flat_map(|h| h.template.secrets()))
        .map(str::to_owned)
        .collect()
}

/// Resolves every secret in `names`.
pub(crate) async fn resolve(
    secrets: &Secrets,
    names: &BTreeSet<String>,
) -> Result<HashMap<String, SecretString>, SecretError> {
    let mut values = HashMap::with_capacity(names.len());
    for name in names {
        values.insert(name.clone(), secrets.get(name).await?);
    }
    Ok(values)
}

/// Writes the caller's rendered headers, then the route's own headers
/// (which win), with the verified `user`'s claims where they say so.
/// Rendered values are marked sensitive so HTTP/2 never puts them in a
/// compression table. Returns the header whose value could not be built.
pub(crate) fn inject(
    headers: &mut HeaderMap,
    caller: Vec<CallerHeader>,
    route: &Route,
    values: &HashMap<String, SecretString>,
    user: Option<&User>,
) -> Result<(), HeaderName> {
    let render = |template: &Template, name: &HeaderName| -> Result<HeaderValue, HeaderName> {
        let text = template.render(|placeholder| match placeholder {
            Placeholder::Secret(secret) => values
                .get(secret)
                .map(|v| v.expose().to_owned())
                .ok_or_else(|| name.clone()),
            // Filled by `for_user` before; never sent unfilled.
            Placeholder::User(_) => Err(name.clone()),
        })?;
        let text = SecretString::from(text);
        // UTF-8 claims are allowed (obs-text); control characters were
        // refused before (`identity::headers::admit_claims`).
        let mut value =
            HeaderValue::from_bytes(text.expose().as_bytes()).map_err(|_| name.clone())?;
        value.set_sensitive(true);
        Ok(value)
    };
    for CallerHeader { name, values: list } in caller {
        headers.remove(&name);
        for value in list {
            let value = match value {
                CallerValue::Plain(plain) => plain,
                CallerValue::Template(template) => render(&template, &name)?,
            };
            headers.append(name.clone(), value);
        }
    }
    for h in &route.headers {
        if h.template.user_fields().next().is_some() {
            // One line per group for `${{ user.groups }}`; none without.
            headers.remove(&h.name);
            let user = user.ok_or_else(|| h.name.clone())?;
            for filled in h.template.for_user(&user.name, &user.groups) {
                headers.append(h.name.clone(), render(&filled, &h.name)?);
            }
            continue;
        }
        let value = match &h.literal {
            Some(v) => v.clone(),
            None => render(&h.template, &h.name)?,
        };
        headers.insert(h.name.clone(), value);
    }
    Ok(())
}
