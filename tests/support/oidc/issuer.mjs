// A real OpenID provider for tests/identity.rs: panva's certified
// oidc-provider, on 127.0.0.1, issuing JWT access tokens (client
// credentials grant + resource indicator) whose `sub` is the client id
// (one client per test user) and whose `groups` claim comes from the
// table below (extraTokenClaims).
//
// Environment:
//   PORT   port to listen on (0: any; the chosen one is printed)
//   KID    the signing key's id (a fresh EC P-256 key every start, so a
//          restart with another KID is a key rotation)
//
// Prints `listening <port>` on stdout once it serves.
import { generateKeyPair, exportJWK } from 'jose';
import Provider from 'oidc-provider';

const port = Number(process.env.PORT || 0);
const kid = process.env.KID || 'k1';

// Users (clients) and their groups. `brief` gets tokens valid 1 s.
const many = Array.from({ length: 101 }, (_, i) => `g${i}`);
const users = {
  jane: ['group:default/platform', 'dev'],
  bob: ['group:default/Platform', 'group:default/platform-admins'],
  brief: ['group:default/platform'],
  mallory: ['group:default/platform', 'ops\r\nX-Injected: 1'],
  crowd: ['group:default/platform', ...many],
  curly: ['group:default/platform', '${{ secrets.k8s_sa }}'],
};

const { privateKey } = await generateKeyPair('ES256', { extractable: true });
const jwk = { ...(await exportJWK(privateKey)), kid, alg: 'ES256', use: 'sig' };

const server = (await import('node:http')).createServer();
await new Promise((resolve) => server.listen(port, '127.0.0.1', resolve));
const actual = server.address().port;
const issuer = `http://127.0.0.1:${actual}`;

const provider = new Provider(issuer, {
  clients: Object.keys(users).map((id) => ({
    client_id: id,
    client_secret: `secret-${id}`,
    grant_types: ['client_credentials'],
    redirect_uris: [],
    response_types: [],
    token_endpoint_auth_method: 'client_secret_post',
    id_token_signed_response_alg: 'ES256',
  })),
  jwks: { keys: [jwk] },
  cookies: { keys: ['tether-test-only'] },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => 'urn:tether',
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resource, client) => ({
        scope: 'api',
        audience: 'tether',
        accessTokenFormat: 'jwt',
        accessTokenTTL: client.clientId === 'brief' ? 1 : 600,
        jwt: { sign: { alg: 'ES256' } },
      }),
    },
  },
  extraTokenClaims: (ctx, token) => ({ groups: users[token.clientId] || [] }),
});
provider.proxy = false;

server.on('request', provider.callback());
console.log(`listening ${actual}`);
