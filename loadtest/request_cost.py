"""CPU a registry spends per request, by kind: N of each, one after another on one
keep-alive connection, the registry's CPU read from /proc before and after.

    python3 loadtest/request_cost.py PORT PID [N]

PORT: a distribution registry on 127.0.0.1 (plain HTTP, deletes enabled, an empty
storage); PID: its process, whose CPU is read. It pushes one small image into a/b first.
"""
import http.client, hashlib, json, os, sys, time
port=int(sys.argv[1]); pid=int(sys.argv[2]); N=int(sys.argv[3]) if len(sys.argv)>3 else 400
def cpu(): 
    f=open(f'/proc/{pid}/stat').read().split(')')[1].split(); return (int(f[11])+int(f[12]))/os.sysconf('SC_CLK_TCK')
c=http.client.HTTPConnection('127.0.0.1',port)
def req(m,p,body=None,h={}):
    c.request(m,p,body=body,headers=h); r=c.getresponse(); d=r.read(); return r.status,r.getheader('Location'),d
blob=os.urandom(1000); d='sha256:'+hashlib.sha256(blob).hexdigest()
cfg=b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'; dc='sha256:'+hashlib.sha256(cfg).hexdigest()
for b,dd in [(blob,d),(cfg,dc)]:
    s,loc,_=req('POST','/v2/a/b/blobs/uploads/'); sep='&' if '?' in loc else '?'
    s,_,_=req('PUT',loc+sep+'digest='+dd,b,{'Content-Type':'application/octet-stream','Content-Length':str(len(b))}); assert s==201,s
man=json.dumps({"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":dc,"size":len(cfg)},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":d,"size":len(blob)}]}).encode()
mh={'Content-Type':'application/vnd.oci.image.manifest.v1+json'}
s,_,_=req('PUT','/v2/a/b/manifests/t0',man,mh); assert s==201,s
md='sha256:'+hashlib.sha256(man).hexdigest()
idx=json.dumps({"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":md,"size":len(man),"platform":{"architecture":"amd64","os":"linux"}}]}).encode()
cases=[
 ('HEAD blob', lambda i: req('HEAD',f'/v2/a/b/blobs/{d}')),
 ('POST mount from self (201)', lambda i: req('POST',f'/v2/a/b/blobs/uploads/?mount={d}&from=a/b')),
 ('POST mount cross-repo (201)', lambda i: req('POST',f'/v2/x/r{i}/blobs/uploads/?mount={d}&from=a/b')),
 ('POST plain upload (202)', lambda i: req('POST',f'/v2/a/b/blobs/uploads/')),
 ('GET manifest 404', lambda i: req('GET',f'/v2/a/b/manifests/missing{i}',None,{'Accept':'application/vnd.oci.image.index.v1+json'})),
 ('GET manifest by tag', lambda i: req('GET',f'/v2/a/b/manifests/t0',None,{'Accept':'application/vnd.oci.image.manifest.v1+json'})),
 ('PUT manifest (new tag)', lambda i: req('PUT',f'/v2/a/b/manifests/m{i}',man,mh)),
 ('PUT index (new tag)', lambda i: req('PUT',f'/v2/a/b/manifests/i{i}',idx,{'Content-Type':'application/vnd.oci.image.index.v1+json'})),
 ('GET tags list', lambda i: req('GET','/v2/a/b/tags/list?n=1000')),
]
for name,f in cases:
    c0=cpu(); t=time.time()
    for i in range(N): f(i)
    print(f"{name:32s} {1000*(cpu()-c0)/N:.2f} ms CPU/request  ({1000*(time.time()-t)/N:.2f} ms wall)")
