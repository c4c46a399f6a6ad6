// The web SDK's REST send and search against a real server.
// node tests/js/rest_search.mjs HTTP_URL TOKEN ADMIN_TOKEN CONVERSATION_ID BOT_ID
// Prints one JSON line of what it saw.
import { ParleyClient, RestClient, ParleyApiError } from '../../src/parley/static/parley.js';

const [httpUrl, token, adminToken, cid, botId] = process.argv.slice(2);
const out = {};
const rest = new RestClient({ apiUrl: httpUrl, getToken: () => token });
const first = await rest.sendMessage(cid, 'Crème brûlée for the team', { localId: 'js-1' });
const again = await rest.sendMessage(cid, 'different words', { localId: 'js-1' });
out.created = [first.created, again.created];
out.sameId = first.message.id === again.message.id;
const admin = new RestClient({ apiUrl: httpUrl, getToken: () => adminToken });
const asBot = await admin.sendMessage(cid, 'build passed for the team', { localId: 'js-2', senderId: botId });
out.botSender = asBot.message.sender_id;
const client = new ParleyClient({ token, url: httpUrl.replace('http', 'ws') + '/ws', userId: 'x', network: null });
const page = await client.search('creme "for the team"', { limit: 5 });
out.found = page.messages.map((m) => m.content);
out.hasMore = page.has_more;
const both = await rest.search('team', { conversationId: cid, limit: 1 });
out.firstPage = both.messages.length;
out.nextOffset = both.next_offset;
try {
  await rest.search('-only');
} catch (err) {
  out.error = err instanceof ParleyApiError ? [err.status, err.code] : String(err);
}
client.destroy();
console.log(JSON.stringify(out));
